"""The conversation the model is taught: a question about the image and a one-level answer.

Training draws one of :data:`QUESTIONS` per sample (the authors train with ten paraphrases);
scoring always asks :data:`SCORING_QUESTION`. The answer is :data:`ANSWER_TEMPLATE`, whose
``{level}`` is one of :data:`deqa.LEVELS`; the level token follows :data:`ANSWER_PREFIX`.
"""

SCORING_QUESTION = "How would you rate the quality of this image?"
QUESTIONS = [
    SCORING_QUESTION,
    "What do you think about the quality of this image?",
    "Can you rate the quality of this picture?",
    "How is the quality of this image?",
    "What is your quality rating for this image?",
    "Could you evaluate the quality of this image?",
    "How good is the quality of this picture?",
    "Rate the quality of this image.",
    "What is the visual quality of this photo?",
    "How would you judge the quality of this image?",
]
ANSWER_PREFIX = "The quality of the image is"
ANSWER_TEMPLATE = ANSWER_PREFIX + " {level}."
