"""Figures: the shared style (:mod:`.style`, :mod:`.ticks`), run plots (:mod:`.runs`, :mod:`.flow`,
:mod:`.scalar_figures`) and the HTML report (:mod:`.report`); :mod:`.selection` and :mod:`.labels`
choose what a figure shows and say it in words."""
