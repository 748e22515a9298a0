# cascade on CPU: torch from the PyTorch CPU index (no CUDA wheels), then the project.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
WORKDIR /app

RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

COPY pyproject.toml README.md ./
COPY cascade ./cascade
COPY connectors ./connectors
COPY features ./features
RUN pip install .

RUN useradd --create-home cascade
USER cascade
EXPOSE 8080
# Every NAME.yaml in CASCADE_CONFIG_DIR is served; CASCADE_REDIS_URL turns on the shared cache.
CMD ["cascade", "serve", "--host", "0.0.0.0", "--port", "8080"]
