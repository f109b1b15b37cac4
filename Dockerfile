# medray image: the official Ray image (same Ray and Python as requirements.txt / pyproject.toml)
# plus torch, the pinned dependencies and medray itself.
#
#   docker build --build-arg VARIANT=cpu -t ghcr.io/medray/medray:0.1.0-ray2.60.0-py311-cpu .
#   docker build --build-arg VARIANT=gpu -t ghcr.io/medray/medray:0.1.0-ray2.60.0-py311-gpu .
#
# The versions here are checked against requirements.txt, pyproject.toml, the Makefile and every
# manifest in k8s/ by `python -m medray.deploy.versions` (and tests/integration/test_k8s_manifests.py).
ARG RAY_VERSION=2.60.0
ARG PYTHON_TAG=py311
ARG VARIANT=cpu
FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-${VARIANT}

# ARGs declared before FROM are not visible after it: declare again to use them below.
ARG VARIANT=cpu
ARG TORCH_VERSION=2.13.0
# cpu: the CPU-only wheel (a few hundred MB); gpu: the default PyPI build, which bundles its CUDA
# runtime (the node needs only the NVIDIA driver).
ARG TORCH_INDEX_CPU=https://download.pytorch.org/whl/cpu
ARG TORCH_INDEX_GPU=https://pypi.org/simple

ENV RAY_USAGE_STATS_ENABLED=0 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true \
    NO_ALBUMENTATIONS_UPDATE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Created as the image's user (ray, uid 1000): pip builds medray in place and needs to write here.
RUN mkdir -p /home/ray/medray
WORKDIR /home/ray/medray

# torch first and pinned, so the requirements below never pull a different build.
RUN case "${VARIANT}" in \
      cpu) index="${TORCH_INDEX_CPU}" ;; \
      gpu) index="${TORCH_INDEX_GPU}" ;; \
      *) echo "VARIANT must be cpu or gpu, got '${VARIANT}'" >&2; exit 1 ;; \
    esac \
    && pip install "torch==${TORCH_VERSION}" --index-url "${index}"

# Dependencies in their own layer: code changes do not reinstall them.
# requirements.txt pins ray[...]==RAY_VERSION, the version already in the base image.
COPY --chown=1000:100 requirements.txt ./
RUN pip install -r requirements.txt

COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 platform/ ./platform/
RUN pip install --no-deps . && pip check \
    && python -c "import medray, ray, torch; print('medray', medray.__version__, 'ray', ray.__version__, 'torch', torch.__version__)"

# Job entrypoints and configs (`python jobs/<step>.py --config jobs/configs/<step>.yaml`, run from
# this WORKDIR by RayJob) and the Serve configs.
COPY --chown=1000:100 jobs/ ./jobs/
COPY --chown=1000:100 serve_configs/ ./serve_configs/
