"""The core: models, policy, the CodePool service, and the Store and Backend plug points."""
