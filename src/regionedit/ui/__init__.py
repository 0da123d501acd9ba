"""Local web app (``regionedit serve``): paint masks, a prompt per mask, edit in the browser.

Needs the ``ui`` extra (gradio). Importing this package imports neither gradio nor starts a
server; :func:`regionedit.ui.app.build_app` builds the page.
"""
