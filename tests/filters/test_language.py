"""Language identification offline, on real sentences in several languages."""

from __future__ import annotations

from mmcurate.filters.language import identify

SENTENCES = {
    "en": ["a dog catching a frisbee in the park", "two children are building a sandcastle on the beach",
           "an old red tractor parked in front of a barn"],
    "fr": ["un chien qui attrape un frisbee dans le parc", "deux enfants construisent un château de sable sur la plage"],
    "de": ["ein Hund fängt einen Frisbee im Park", "zwei Kinder bauen eine Sandburg am Strand"],
    "es": ["un perro atrapando un frisbi en el parque", "dos niños construyen un castillo de arena en la playa"],
    "it": ["un cane che afferra un frisbee nel parco", "due bambini costruiscono un castello di sabbia sulla spiaggia"],
    "ru": ["собака ловит фрисби в парке", "двое детей строят замок из песка на пляже"],
    "ja": ["公園でフリスビーをキャッチする犬", "浜辺で砂の城を作る二人の子供"],
    "zh": ["一只狗在公园里接飞盘", "两个孩子在海滩上堆沙堡"],
    "ko": ["공원에서 원반을 잡는 개", "해변에서 모래성을 쌓는 두 아이"],
    "th": ["สุนัขกำลังรับจานร่อนในสวนสาธารณะ", "เด็กสองคนกำลังสร้างปราสาททรายบนชายหาด"],
}


def test_identifies_real_sentences_with_confidence():
    texts = [t for ts in SENTENCES.values() for t in ts]
    truth = [lang for lang, ts in SENTENCES.items() for _ in ts]
    found = identify(texts)
    assert [lang for lang, _ in found] == truth
    assert all(0 < conf <= 1 for _, conf in found)


def test_low_accuracy_mode_gets_clear_english():
    found = identify(SENTENCES["en"], accuracy="low")
    assert [lang for lang, _ in found] == ["en"] * 3
