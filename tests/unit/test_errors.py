"""brainmri/errors.py: a missing optional dependency is one line naming the extra to install."""

import pytest

from brainmri.errors import MissingExtra, require


def test_a_missing_extra_names_the_pip_command():
    with pytest.raises(MissingExtra) as caught:
        require("no_such_module_brainmri.sub", "dicom", "reading DICOM")
    assert str(caught.value) == 'reading DICOM needs no_such_module_brainmri: pip install "brainmri[dicom]"'
    assert require("json", "none", "anything").dumps([1]) == "[1]"
