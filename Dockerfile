# ndgeo with the CPU build of torch. Build: docker build -t ndgeo .
# Run the demo:  docker run --rm ndgeo demo
# Your data:     docker run --rm -v "$PWD:/data" -w /data ndgeo apply model.safetensors scene.tif -o out.tif
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLBACKEND=Agg

# CPU-only torch first (a plain `pip install torch` would pull the multi-GB CUDA build).
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /opt/ndgeo
COPY pyproject.toml README.md ./
COPY ndgeo ./ndgeo
RUN pip install .

RUN useradd --create-home --uid 1000 ndgeo
COPY --chown=ndgeo:ndgeo sample_data /home/ndgeo/sample_data
USER ndgeo
WORKDIR /home/ndgeo

ENTRYPOINT ["ndgeo"]
CMD ["--help"]
