"""Readers and writers for the quantized files people deploy (TFLite, ONNX QDQ).

Each format has its own package (reader, ops, graph, layers, writer); what they share lives
here: layers.DeployedLayer (integer buffers and exact accumulation), model.DeployedModel (the
simulation beside its float reference), dataflow (running operators in file order), writing
(refusing the original, fitting integers, atomic output) and arithmetic.
"""
