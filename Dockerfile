# The driftline service image (the worker and CLI); Kafka runs from the apache/kafka image in compose.yaml.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY streams streams
COPY models models
COPY forecasters forecasters
COPY rankers rankers
COPY roles roles
RUN pip install --no-cache-dir .
EXPOSE 8080
CMD ["driftline", "worker"]
