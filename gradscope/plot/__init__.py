"""Figures: the shared style (:mod:`.style`, :mod:`.ticks`), run plots (:mod:`.runs`, :mod:`.flow`,
:mod:`.scalar_figures`, :mod:`.quality`) and the HTML report (:mod:`.report`, built from :mod:`.report_runs`,
:mod:`.report_sweeps` and :mod:`.report_html`); :mod:`.selection` and :mod:`.labels` choose what a figure
shows and say it in words, :mod:`.metric_info` what each sample-quality metric means."""
