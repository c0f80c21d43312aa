# ordered-jax on NVIDIA GPUs: Python 3.12 and JAX's CUDA wheels from pip.
#
# CUDA major version: 13 by default (jax[cuda13], JAX >= 0.11): the CUDA runtime, cuBLAS,
# cuDNN, NCCL and ptxas come as pip packages, so the host needs only the NVIDIA driver
# (>= 580 for CUDA 13) and the NVIDIA container toolkit for --gpus. This is the setup of
# the lent H200 machines (JAX 0.11.2 with jax-cuda13-plugin, driver 580). With an older
# driver (>= 525 and < 580) build the CUDA 12 wheels instead:
#   docker build --build-arg JAX_CUDA=cuda12 -t ordered-jax .
# `nvidia-smi` prints the driver version (and the newest CUDA it supports).
#
#   docker build -t ordered-jax .
#   docker run --gpus all -v $PWD/output:/app/output ordered-jax \
#       --config=configs/paper.py --workdir=output/paper
#   docker run --gpus all -v $PWD/output:/app/output --entrypoint python ordered-jax \
#       benchmarks/gpu_check.py --out=output/gpu_check      # the GPU check (docs/benchmarks.md)
FROM python:3.12-slim

ARG JAX_CUDA=cuda13
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    ORDERED_JAX_CACHE=/app/output/.jax-cache

WORKDIR /app
COPY requirements.txt .
# JAX's CUDA build first; requirements.txt's jax range (>=0.10.2,<0.13) then keeps it.
RUN pip install "jax[${JAX_CUDA}]>=0.11,<0.13" && pip install -r requirements.txt

COPY . .
ENTRYPOINT ["python", "main.py"]
CMD ["--config=configs/tiny.py", "--workdir=output/tiny"]
