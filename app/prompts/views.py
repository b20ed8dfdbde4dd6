from fastapi import APIRouter

router = APIRouter(tags=["prompts"])
api = APIRouter(tags=["prompts"])
