import os

# dm_control renders through EGL on CPU machines (osmesa does not work here); set before any import.
os.environ.setdefault("MUJOCO_GL", "egl")

import torch  # noqa: E402

# Two cores: keep intra-op threads fixed so test times are predictable (OMP_NUM_THREADS wins if set).
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", min(2, os.cpu_count() or 1))))
