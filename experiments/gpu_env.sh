# Source on the GPU machine from the repo root: installs the carried pure-Python wheels
# (e3nn-jax, jraph, jmp, ase, vesin) and puts mpnn_jax on the path. The wheels are not committed;
# fetch them once on a machine with PyPI (Python 3.12 target, as on the GPU image):
#   for p in e3nn-jax==0.21.0 jraph==0.0.6.dev0 jmp==0.0.4 ase==3.29.0 vesin==0.6.2; do
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl "$p"; done
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || return 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
