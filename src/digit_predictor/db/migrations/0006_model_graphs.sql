-- The ONNX graph each version is served as (ml/export.py), beside its weights: the api runs the
-- graph without torch, so every process and replica loads it from here like the weights. Null
-- for versions registered before graphs were stored; the api exports those itself, once, and
-- stores the result (sha256 kept with it, like the weights').
ALTER TABLE models
    ADD COLUMN onnx bytea CHECK (onnx IS NULL OR octet_length(onnx) > 0),
    ADD COLUMN onnx_sha256 text CHECK (onnx_sha256 ~ '^[0-9a-f]{64}$'),
    ADD CONSTRAINT models_onnx_has_sha CHECK ((onnx IS NULL) = (onnx_sha256 IS NULL));
