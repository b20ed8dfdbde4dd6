from sqlalchemy.orm import Session

from tests.factories import make_annotation, make_prompt_set, make_task, make_user


def test_annotation_factory_stores_dense_ranks(session: Session) -> None:
    ps = make_prompt_set(session, k=4)
    task = make_task(session, prompt_set=ps)
    ann = make_annotation(
        session, task=task, user=make_user(session), ranks=[1, 1, 3, 4], ratings=[6, 6, 3, 1]
    )
    assert sorted(i.rank for i in ann.items) == [1, 1, 2, 3]
    assert task.label_count == 1 and len(task.completions) == 4
