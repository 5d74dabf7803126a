"""Running what was generated and holding it to the reference: on the host (`check`,
`host_training`, `host_train`) and in emulators (`sim`).
"""
