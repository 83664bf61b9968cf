import pytest

from workbench.gen.tokenizer import TextTokenizer

TEXTS = ["cordless drill 18v black", "drill bits set", "stainless steel mixer", "red dress doll medium",
         "lawn mower self propelled", "phone mount tripod white"] * 5


def test_trained_tokenizer_encodes_pads_and_round_trips(tmp_path):
    tok = TextTokenizer.train(TEXTS, vocab_size=200, min_frequency=1)
    ids, mask = tok.encode(["Cordless DRILL", "stainless steel mixer for the kitchen"])
    assert ids.shape == mask.shape and ids.shape[0] == 2
    assert mask[0].sum() < mask[1].sum() and (ids[~mask] == tok.pad_id).all()
    tok.save(tmp_path / "tokenizer.json")
    back = TextTokenizer.load(tmp_path / "tokenizer.json")
    assert back.key == tok.key and back.key.startswith("wordpiece-")
    assert back.encode(["cordless drill"])[0].tolist() == tok.encode(["cordless drill"])[0].tolist()


def test_unknown_characters_become_unk_and_long_text_is_truncated():
    tok = TextTokenizer.train(TEXTS, vocab_size=200, min_frequency=1)
    ids, mask = tok.encode(["☃☃ drill ✈"])
    assert tok.tok.token_to_id("[UNK]") in ids[0].tolist()
    ids, mask = tok.encode(["drill " * 2000, "x" * 10_000], max_len=16)
    assert ids.shape == (2, 16) and ids[0, 15].item() == tok.tok.token_to_id("[SEP]")


@pytest.mark.parametrize("bad", ["", "   \n\t", None, 3])
def test_empty_or_non_text_queries_are_refused_by_position(bad):
    tok = TextTokenizer.train(TEXTS, vocab_size=200, min_frequency=1)
    with pytest.raises(ValueError, match="text 1 is empty or not a string"):
        tok.encode(["drill", bad])


def test_minilm_tokenizer_and_bad_files(tmp_path):
    tok = TextTokenizer.minilm()
    assert tok.key == "minilm" and tok.vocab_size == 30522
    ids, _ = tok.encode(["cordless drill"])
    assert ids[0, 0].item() == 101  # [CLS]
    tok.save(tmp_path / "t.json")
    assert TextTokenizer.load(tmp_path / "t.json").key == "minilm"
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a tokenizers JSON"):
        TextTokenizer.load(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="workbench train"):
        TextTokenizer.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="no texts"):
        tok.encode([])


def test_training_tokenizes_each_distinct_text_once_and_every_example_finds_its_own():
    from workbench.gen.train import tokenize

    tok = TextTokenizer.train(TEXTS, vocab_size=200, min_frequency=1)
    ids, lens, row = tokenize(tok, TEXTS, 16, chunk=4)  # TEXTS: 6 texts, 5 times each; chunks of 4 distinct texts
    assert ids.shape[0] == lens.shape[0] == 6 and row.shape == (30,)
    for i, text in enumerate(TEXTS):
        one, mask = tok.encode([text], 16)
        assert lens[row[i]] == mask.sum() and ids[row[i], : one.shape[1]].tolist() == one[0].tolist()
        assert (ids[row[i], one.shape[1]:] == tok.pad_id).all()  # padded to the longest of all chunks
