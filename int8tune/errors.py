"""Exception types. Every message names the file, layer, blob or key at fault and what was expected."""


class Int8TuneError(Exception):
    """Base class of every error this tool raises on purpose."""


class ModelError(Int8TuneError):
    """A prototxt or caffemodel that cannot be read or is inconsistent (names the file and layer)."""


class UnsupportedLayerError(ModelError):
    """A Caffe layer type or setting the converter has no faithful translation for."""


class DataError(Int8TuneError):
    """An image, data list or preprocessing result that is unusable (names the file or line)."""


class ConfigError(Int8TuneError):
    """A command-line option, parameter file or configuration key with a bad value (names the key)."""


class RegistryError(Int8TuneError, KeyError):
    """Lookup of an unknown name in a registry, or a duplicate registration."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


class ClusterError(Int8TuneError):
    """A Ray cluster that cannot be reached, has no room for a worker, or runs other versions than this driver."""
