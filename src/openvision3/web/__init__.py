"""``ov3 serve``: a local web app (Gradio) that shows what the unified tokens do.

Tabs: Reconstruct (PSNR/SSIM, decoder noise levels), Caption and classify (greedy or beam
captions, zero-shot probabilities, nearest gallery images), Interpolate (decoded images along
the line between two images' tokens), Generate (a generator from ``openvision3.generation``)
and Ask (a VLM from ``openvision3.understanding``). Every asset is served from this machine.

    uploads.py   uploaded files -> RGB images or one clear message (limits, odd formats)
    handlers.py  what each tab computes, on PIL images (no Gradio)
    parts.py     the optional generator and VLM, or why a tab has none
    gallery.py   the small image gallery (the synthetic world, or a folder)
    app.py       the Gradio page
    startup.py   what ``ov3 serve`` checks first: the address, the demo's training time
    serve.py     the ``ov3 serve`` command

Gradio is imported only by ``app.py`` and only when the app is built.
"""
