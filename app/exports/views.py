from fastapi import APIRouter

router = APIRouter(tags=["exports"])
api = APIRouter(tags=["exports"])
