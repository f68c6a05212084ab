"""``edgeqwen serve``: an OpenAI-compatible HTTP server on the runtime (the [serve] extra).

Layers, one way: params (request bodies -> Job) -> models (admission, Job -> prompt and options) ->
app (routes, whole and streamed answers) -> run (uvicorn, draining shutdown). grammar, tools, limits
and telemetry are leaves. Nothing here imports the compiler.
"""
