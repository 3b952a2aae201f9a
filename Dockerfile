# One image for every Babel Queue process: api, worker, relay, flower, migrate.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 babelq \
    && useradd --system --uid 10001 --gid babelq --home-dir /home/babelq --create-home babelq

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY workers ./workers
COPY migrations ./migrations
RUN pip install .

# Numeric, so Kubernetes can verify runAsNonRoot; the manifests run as 10001:10001 too.
USER 10001:10001
EXPOSE 8000 5555
ENTRYPOINT ["babelq"]
CMD ["api", "--host", "0.0.0.0"]
