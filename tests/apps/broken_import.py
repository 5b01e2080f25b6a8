def explode():
    raise ImportError("the model weights module is missing")


explode()
