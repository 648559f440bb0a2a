"""The TensorFlow runtime: the only package of hotserve that imports TensorFlow.

Importing this package (which any import of its modules does first) sets hotserve's defaults for
TensorFlow's environment variables (`memory.TF_ENV_DEFAULTS`), so they are in place before
TensorFlow is imported, under every entry point. It is the one import-time side effect allowed
here, because TensorFlow reads these variables only once; a value already in the environment is
never changed. Nothing else happens at import.
"""

from app.runtime.memory import set_tf_env_defaults

set_tf_env_defaults()
