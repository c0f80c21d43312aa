# ordered-jax on NVIDIA GPUs: Python 3.12, JAX with CUDA 12 from pip (needs a driver >= 525).
#   docker build -t ordered-jax .
#   docker run --gpus all -v $PWD/output:/app/output ordered-jax \
#       --config=configs/paper.py --workdir=output/paper
FROM python:3.12-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    ORDERED_JAX_CACHE=/app/output/.jax-cache

WORKDIR /app
COPY requirements.txt .
RUN pip install "jax[cuda12]>=0.11,<0.13" && pip install -r requirements.txt

COPY . .
ENTRYPOINT ["python", "main.py"]
CMD ["--config=configs/tiny.py", "--workdir=output/tiny"]
