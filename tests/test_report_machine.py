"""report.machine: the CPU line every timing is printed with names its vector extensions,
since ONNX Runtime's integer kernels round differently on AVX2 and AVX-512 VNNI."""

from qnnrepair.report import machine, vector_extensions


def test_vector_extensions_names_the_widest():
    assert vector_extensions("fpu sse2 avx avx2 fma".split()) == "AVX2"
    assert vector_extensions("avx2 avx512f avx512bw".split()) == "AVX-512"
    assert vector_extensions("avx2 avx512f avx512_vnni".split()) == "AVX-512 VNNI"
    assert vector_extensions("neon asimd".split()) == ""


def test_machine_line_has_cores_threads_and_versions():
    line = machine()
    assert " cores" in line and "torch threads" in line and "highspy" in line
