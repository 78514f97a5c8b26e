# One image for every selfplay service (driver, workers, trainer); docker-compose.yml runs it.
# TORCH_INDEX selects the PyTorch build: the CPU wheels by default, a CUDA index for GPU hosts
# (e.g. --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128).
FROM python:3.11-slim
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
WORKDIR /app
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX" torch==2.13.0
COPY . .
RUN pip install --no-cache-dir ".[distributed]"
