from fastapi import APIRouter

router = APIRouter(tags=["labeling"])
api = APIRouter(tags=["labeling"])
