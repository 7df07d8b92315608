# Source on the GPU machine from the repo root: installs the carried pure-Python wheels
# (e3nn-jax, jraph, jmp, ase, vesin; see README "GPU runs") and puts mpnn_jax on the path.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || return 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
