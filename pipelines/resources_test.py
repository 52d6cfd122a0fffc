import pytest

from configs.schema import ResourceSpec
from pipelines.resources import cpu_cores, memory_gb, to_resource_spec_proto


@pytest.mark.parametrize("q,cores", [("500m", 0.5), ("4", 4.0), ("2.5", 2.5)])
def test_cpu(q, cores):
    assert cpu_cores(q) == cores


@pytest.mark.parametrize(
    "q,gb", [("16Gi", 17.179869184), ("512Mi", 0.536870912), ("2G", 2.0), ("1500M", 1.5), ("1Ti", 1099.511627776)]
)
def test_memory_in_decimal_gigabytes(q, gb):
    assert memory_gb(q) == pytest.approx(gb)


def test_proto():
    rs = to_resource_spec_proto(ResourceSpec(cpu="8", memory="32Gi", gpu=2))
    assert rs.cpu_limit == rs.cpu_request == 8
    assert rs.memory_limit == pytest.approx(34.359738)
    assert (rs.accelerator.type, rs.accelerator.count) == ("nvidia.com/gpu", 2)
    assert not to_resource_spec_proto(ResourceSpec()).HasField("accelerator")
