"""kserve-canary: progressive delivery for KServe InferenceServices."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kserve-canary")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"
