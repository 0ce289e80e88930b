# MLflow tracking server with the PostgreSQL driver and the Azure Blob client
# (the official image ships neither). Same MLflow as uv.lock.
FROM ghcr.io/mlflow/mlflow:v3.17.2
RUN pip install --no-cache-dir "psycopg2-binary==2.9.10" "azure-storage-blob==12.26.0" "azure-identity==1.25.1" \
    && useradd --system --uid 10001 --create-home mlflow
USER 10001
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=3)"]
EXPOSE 5000
ENTRYPOINT ["mlflow", "server"]
