from __future__ import annotations

from tests.component.fakes import FakeNvml
from vllama.config.settings import ModelSpec, load_config
from vllama.scheduling.devices import Devices
from vllama.scheduling.memory import MemoryPlanner

GiB = 1 << 30


def planner(gpus: tuple[int, ...] = (), **server: object) -> MemoryPlanner:
    settings = load_config(file_data={"server": dict(server)}).server
    devices = Devices(nvml=FakeNvml(*gpus)) if gpus else Devices(use_gpus=False)
    return MemoryPlanner(settings, devices)


def test_cpu_workers_get_a_bounded_kv_cache_unless_they_set_one() -> None:
    cpu = planner(kv_cache="3GiB")
    assert cpu.kind == "cpu"
    plain = ModelSpec(model="/m")
    assert cpu.share(plain, ("cpu",), GiB).env == {"VLLM_CPU_KVCACHE_SPACE": "3"}
    assert cpu.need("m", plain, 2 * GiB) == 2 * GiB + 3 * GiB + 2 * GiB  # weights + KV + overhead
    own_env = ModelSpec(model="/m", env={"VLLM_CPU_KVCACHE_SPACE": "1"})
    assert cpu.share(own_env, ("cpu",), GiB).env == {}
    assert cpu.need("m", own_env, 2 * GiB) == 2 * GiB + 1 * GiB + 2 * GiB
    own_flag = ModelSpec(model="/m", args=("--kv-cache-memory-bytes", "2G"))
    assert cpu.share(own_flag, ("cpu",), GiB).env == {}


async def test_gpu_workers_are_pinned_and_given_their_share_of_the_measured_total() -> None:
    gpu = planner(gpus=(80 * GiB, 80 * GiB))
    assert gpu.kind == "gpu"
    await gpu.snapshot(lambda: ())  # every placement decision takes one first
    placed = gpu.share(ModelSpec(model="/m"), ("gpu:1",), 20 * GiB)
    assert placed.env == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "1"}
    assert placed.args == ("--gpu-memory-utilization", "0.250")
    own = ModelSpec(model="/m", args=("--gpu-memory-utilization=0.5",))
    assert gpu.share(own, ("gpu:0",), 20 * GiB).args == ()


def test_gpu_estimates_include_a_kv_cache_share() -> None:
    gpu = planner(gpus=(80 * GiB,), kv_cache="6GiB")
    assert gpu.need("m", ModelSpec(model="/m"), 2 * GiB) == 2 * GiB + 6 * GiB + 1 * GiB
    own = ModelSpec(model="/m", args=("--kv-cache-memory-bytes", "3G"))
    assert gpu.need("m", own, 2 * GiB) == 2 * GiB + 3 * GiB + 1 * GiB
    by_share = ModelSpec(model="/m", args=("--gpu-memory-utilization", "0.5"))
    assert gpu.need("m", by_share, 2 * GiB) == 2 * GiB + 1 * GiB
