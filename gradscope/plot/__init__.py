"""Figures: the shared style (:mod:`.style`), run plots (:mod:`.runs`) and the HTML report (:mod:`.report`)."""
