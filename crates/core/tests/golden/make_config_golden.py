"""diffusers 0.42.1's default scheduler configs, as `scheduler_config.json` holds them.
    PYTHONPATH=target/pyref:target/libtorch python3 crates/core/tests/golden/make_config_golden.py
"""
import json
import os

import diffusers
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, HeunDiscreteScheduler)

out = {"diffusers": diffusers.__version__, "configs": []}
for cls in [DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler,
            HeunDiscreteScheduler, DPMSolverMultistepScheduler]:
    config = dict(cls().config)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()}
    config["_class_name"] = cls.__name__
    out["configs"].append(config)
path = os.path.join(os.path.dirname(__file__), "scheduler_configs.json")
with open(path, "w") as f:
    json.dump(out, f, indent=1, default=str)
print("wrote", path)
