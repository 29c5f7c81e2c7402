# streamrec image for the worker, retrain and replay services of docker-compose.yml (Python 3.11, pinned deps).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /app

# Dependencies first (cached while only the code changes): the same pins as `make setup`.
COPY pyproject.toml constraints.txt README.md ./
COPY schemas ./schemas
COPY offline ./offline
COPY stream_worker ./stream_worker
COPY streamrec ./streamrec
RUN pip install -c constraints.txt . \
    && useradd --create-home --uid 10001 streamrec \
    && mkdir -p /data/worker /data/models /data/input \
    && chown -R streamrec /data

USER streamrec

# RocksDB state (tied to the Kafka cluster it was built from) and model versions (MODELS_DIR/current).
ENV STREAMREC_DATA_DIR=/data/worker \
    STREAMREC_MODELS_DIR=/data/models \
    STREAMREC_WEB_HOST=0.0.0.0
VOLUME ["/data/worker", "/data/models"]
EXPOSE 6066

CMD ["streamrec", "worker"]
