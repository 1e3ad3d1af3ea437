# One image for web, worker, beat and flower (docker-compose.yml picks the command). Production requirements
# only: tests, tooling and the embedded single-machine servers are in requirements-dev.txt, not here.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/app/.venv/bin:$PATH

WORKDIR /app
RUN python -m venv /app/.venv
COPY requirements.txt .
RUN pip install --upgrade pip && pip install -r requirements.txt

COPY . .
RUN useradd --system --home-dir /app pdex && mkdir -p /app/var && chown -R pdex /app/var
USER pdex

EXPOSE 8000
CMD ["gunicorn", "-c", "config/gunicorn.py", "config.wsgi", "--bind", "0.0.0.0:8000", "--access-logfile", "-"]
