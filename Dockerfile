# The tuner image used by docker-compose.yml: CUDA PyTorch + tuner.
FROM pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
WORKDIR /app
COPY pyproject.toml README.md ./
COPY tuner ./tuner
RUN pip install --no-cache-dir .
COPY studies ./studies
ENTRYPOINT []
