"""The synthetic corpus: espeak-ng speech with word timestamps (``espeak``), the request/answer grammar
(``grammar``) and the conversations with their turn-taking scenarios (``conversation``)."""
