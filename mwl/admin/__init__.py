"""Administration: user accounts, API tokens, settings changed on the page."""
