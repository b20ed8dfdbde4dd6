from fastapi import APIRouter

router = APIRouter(tags=["runs"])
api = APIRouter(tags=["runs"])
