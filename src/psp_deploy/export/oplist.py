"""ONNX operators this project may emit: each is supported by TensorRT's ONNX parser.

Source: onnx/onnx-tensorrt docs/operators.md (TensorRT 8.5 and later, which also lifts
the "weights must be initializers" restriction on Conv and ConvTranspose, so the grouped
modulated conv with run-time weights parses). A graph using anything else is refused
at export, so a bundle never fails later inside an engine build.
"""

TENSORRT_ONNX_OPS = frozenset(
    {
        "Add",
        "AveragePool",
        "BatchNormalization",
        "Cast",
        "Clip",
        "Concat",
        "Constant",
        "ConstantOfShape",
        "Conv",
        "ConvTranspose",
        "DepthToSpace",
        "DequantizeLinear",
        "Div",
        "Equal",
        "Expand",
        "Flatten",
        "Gather",
        "Gemm",
        "GlobalAveragePool",
        "Identity",
        "LeakyRelu",
        "MatMul",
        "Max",
        "MaxPool",
        "Min",
        "Mul",
        "Neg",
        "Pad",
        "Pow",
        "PRelu",
        "QuantizeLinear",
        "Range",
        "Reciprocal",
        "ReduceMax",
        "ReduceMean",
        "ReduceSum",
        "ReduceSumSquare",
        "Relu",
        "Reshape",
        "Resize",
        "Shape",
        "Sigmoid",
        "Slice",
        "Split",
        "Sqrt",
        "Squeeze",
        "Sub",
        "Tile",
        "Transpose",
        "Unsqueeze",
        "Where",
    }
)
