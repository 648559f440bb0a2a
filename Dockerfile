# hotserve: runs like tensorflow/serving (same ports, env, mounts and arguments).
#   docker build -t hotserve .
#   docker run -p 8501:8501 -v /path/to/my_model:/models/my_model -e MODEL_NAME=my_model hotserve
FROM python:3.11-slim

# glibc's malloc, no jemalloc: with TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1 (hotserve's default, set
# by app.runtime; override it with -e) and the unload path's gc + malloc_trim, resident memory
# returns to the one-version level after every swap (README "Memory after a swap").
# No GLIBC_TUNABLES=glibc.malloc.hugetlb=1: huge pages make a load's first touches stall
# requests (app/hugepages.py; opt in with --malloc_huge_pages).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=1

WORKDIR /opt/hotserve
COPY pyproject.toml README.md ./
COPY app ./app
# Object-store base paths need their fsspec driver: --build-arg EXTRAS="[s3fs]" (or gcsfs, adlfs).
ARG EXTRAS=""
RUN pip install --no-cache-dir ".${EXTRAS}"

# tensorflow/serving's conventions: the model lives at $MODEL_BASE_PATH/$MODEL_NAME.
ENV MODEL_BASE_PATH=/models \
    MODEL_NAME=model
# Versions downloaded from object stores are cached here (an emptyDir on Kubernetes).
ENV HOTSERVE_MODEL_CACHE_DIR=/var/cache/hotserve
RUN useradd --system --uid 10001 --no-create-home hotserve \
    && mkdir -p "${MODEL_BASE_PATH}" "${HOTSERVE_MODEL_CACHE_DIR}" \
    && chown hotserve "${MODEL_BASE_PATH}" "${HOTSERVE_MODEL_CACHE_DIR}"
COPY --chmod=0755 docker/entrypoint.sh /usr/bin/tf_serving_entrypoint.sh
USER hotserve

# 8500: gRPC (TF Serving's PredictionService/ModelService), 8501: REST, as tensorflow/serving.
EXPOSE 8500 8501
# SIGTERM starts a graceful shutdown: /readyz answers 503 at once, in-flight requests drain
# (--drain_timeout_seconds), then versions unload.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8501/healthz').status != 200)"
# The entrypoint runs `hotserve` (TF Serving's flags). To run uvicorn's factory instead, e.g. for
# uvicorn's own flags: --entrypoint uvicorn ... --factory app.main:create_app --host 0.0.0.0
# --port 8501 (settings then come from MODEL_NAME/MODEL_BASE_PATH and HOTSERVE_* only).
ENTRYPOINT ["/usr/bin/tf_serving_entrypoint.sh"]
