from pydantic import BaseModel


class MeOut(BaseModel):
    id: int
    username: str
    role: str
    auth: str  # "cookie" or "token"


class TokenOut(BaseModel):
    id: int
    name: str
    token: str
