"""Put on PYTHONPATH, makes the modules of `verisparse[full]` unimportable, as in the light
install a Raspberry Pi gets, and appends every blocked attempt to $VS_BLOCK_LOG."""
import os
import sys

BLOCKED = {"torch", "tensorflow", "scipy", "tflite_micro", "onnx", "sklearn", "mlxtend", "tqdm", "matplotlib",
           "torchvision", "keras"} | set(filter(None, os.environ.get("VS_BLOCK_EXTRA", "").split(",")))


class _Blocker:
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in BLOCKED:
            if os.environ.get("VS_BLOCK_LOG"):
                with open(os.environ["VS_BLOCK_LOG"], "a") as f:
                    f.write(name + "\n")
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _Blocker())
