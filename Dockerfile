# mwl: Modality Worklist broker. Runs migrations, then `mwl serve`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MWL_DATABASE_URL=sqlite:////data/mwl.db

RUN useradd --system --home-dir /data --create-home mwl
WORKDIR /app
COPY pyproject.toml README.md LICENSE alembic.ini ./
COPY mwl ./mwl
COPY web ./web
COPY migrations ./migrations
RUN pip install --no-cache-dir . && rm -rf /root/.cache

COPY docker/entrypoint.sh /usr/local/bin/mwl-entrypoint
USER mwl
WORKDIR /data
VOLUME ["/data"]
# HL7 MLLP, DICOM, web
EXPOSE 2575 11112 8080
ENTRYPOINT ["mwl-entrypoint"]
CMD ["serve"]
