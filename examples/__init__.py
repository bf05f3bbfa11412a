"""The bundled examples (small repositories and their scripted model answers).

A package only so that ``bakeoff demo`` finds them inside an installed wheel; nothing here
is imported as code.
"""
