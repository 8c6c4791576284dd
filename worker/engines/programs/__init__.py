"""Programs the engine adapters launch as the engine process: mlx_server (mlx-lm's server, pipeline groups),
vllm_group (a vLLM pipeline rank over Ray), sim/ (the timing-model engine for load and routing studies).
"""
