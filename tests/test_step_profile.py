"""torch.profiler on one decode step (utils/measure/step_profile.py)."""
import math

import matplotlib
import pytest

from utils.measure.step_profile import _union_ms, plot_step_timeline, profile_decode_step

matplotlib.use("Agg")


def test_union_of_intervals():
    assert _union_ms([]) == 0
    assert _union_ms([(0, 1, "a"), (0.5, 2, "b"), (3, 4, "c")]) == pytest.approx(3.0)
    assert _union_ms([(0, 10, "a"), (2, 3, "b")]) == pytest.approx(10.0)      # nested: counted once


def test_profile_one_decode_step_on_cpu(course_model):
    prof = profile_decode_step(course_model, batch=1, context=16, warmup=1)
    layers = course_model.config.num_hidden_layers
    assert prof.top_level_ops >= 4 * layers and prof.aten_ops > prof.top_level_ops
    assert prof.kernels == 0 and prof.gpu_busy_ms == 0 and math.isnan(prof.gpu_idle_share)
    assert all(0 <= a <= b for a, b, _ in prof.host_intervals)
    assert "aten::mm" in set(prof.top_ops.op) or "aten::addmm" in set(prof.top_ops.op)
    assert "PyTorch ops called from Python" in prof.summary()
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    plot_step_timeline(prof, ax)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["host: PyTorch ops"]
    plt.close(fig)
