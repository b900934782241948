"""A stand-in for PyAV on the GPU machine only (bench/gpu_session.sh puts this folder on
PYTHONPATH when `import av` fails there). ComfyUI 0.3.x imports av at start-up for its video
types; training and the benchmarks never touch video, and PyAV's wheel (36 MB) does not fit
beside the repository and the host in one device call. Any use raises."""


class _Missing:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("PyAV is not installed on this machine (bench/device_shims stands in for it)")


def open(*args, **kwargs):  # noqa: A001 - av.open's name
    _Missing()


time_base = 1_000_000


def __getattr__(name: str):
    return _Missing
