"""Static reference data for the Shaanxi (陕西省) demo province.

``coldchain seed demo`` builds a realistic-looking installation: a provincial CDC,
ten city CDCs, one CDC per county-level division and a number of vaccination sites
(township health centres, community health service centres) under each county. This
module holds the pure data that generator draws on, so the generator itself stays
free of long literal tables and the data can be checked on its own
(``tests/coldchain/test_seed_data.py``).

The division codes are the real 6-digit GB/T 2260 administrative division codes
(as of the 2020s, after e.g. 神木县 → 神木市, 子长县 → 子长市, 彬县 → 彬州市,
华县 → 华州区, 横山县 → 横山区, 凤翔县 → 凤翔区, 旬阳县 → 旬阳市). Using real codes makes
the generated unit codes look like real CDC unit codes: a 10-digit unit code is the
6-digit division code followed by 4 digits, e.g. ``6101030203`` for a site in 碑林区
(610103).

Unit hierarchy must be taken from the parent link, never inferred from a code
prefix: four county-level CDCs (杨陵区, 韩城市, 神木市, 府谷县, flagged ``direct=True``)
report straight to the provincial CDC rather than to the CDC of the city whose code
prefix they carry. They are still listed under their geographic city here.

Township base names, site suffixes and the personal-name pools are used to name
vaccination sites (``杜曲`` + ``镇卫生院`` → ``杜曲镇卫生院``) and their responsible staff.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CITIES",
    "PERSON_GIVEN",
    "PERSON_SURNAMES",
    "SITE_SUFFIXES",
    "TOWNSHIP_NAMES",
    "City",
    "County",
]


@dataclass(frozen=True, slots=True)
class County:
    """A county-level division (市辖区, 县 or 县级市)."""

    code: str
    """6-digit GB/T 2260 code, e.g. ``"610103"``."""
    name: str
    direct: bool = False
    """True if this county's CDC reports directly to the provincial CDC."""


@dataclass(frozen=True, slots=True)
class City:
    """A prefecture-level city (地级市) with its county-level divisions."""

    code: str
    """6-digit GB/T 2260 code ending in ``00``, e.g. ``"610100"``."""
    name: str
    counties: tuple[County, ...]


CITIES: tuple[City, ...] = (
    City(
        "610100",
        "西安市",
        (
            County("610102", "新城区"),
            County("610103", "碑林区"),
            County("610104", "莲湖区"),
            County("610111", "灞桥区"),
            County("610112", "未央区"),
            County("610113", "雁塔区"),
            County("610114", "阎良区"),
            County("610115", "临潼区"),
            County("610116", "长安区"),
            County("610117", "高陵区"),
            County("610118", "鄠邑区"),
            County("610122", "蓝田县"),
            County("610124", "周至县"),
        ),
    ),
    City(
        "610200",
        "铜川市",
        (
            County("610202", "王益区"),
            County("610203", "印台区"),
            County("610204", "耀州区"),
            County("610222", "宜君县"),
        ),
    ),
    City(
        "610300",
        "宝鸡市",
        (
            County("610302", "渭滨区"),
            County("610303", "金台区"),
            County("610304", "陈仓区"),
            County("610305", "凤翔区"),
            County("610323", "岐山县"),
            County("610324", "扶风县"),
            County("610326", "眉县"),
            County("610327", "陇县"),
            County("610328", "千阳县"),
            County("610329", "麟游县"),
            County("610330", "凤县"),
            County("610331", "太白县"),
        ),
    ),
    City(
        "610400",
        "咸阳市",
        (
            County("610402", "秦都区"),
            County("610403", "杨陵区", direct=True),
            County("610404", "渭城区"),
            County("610422", "三原县"),
            County("610423", "泾阳县"),
            County("610424", "乾县"),
            County("610425", "礼泉县"),
            County("610426", "永寿县"),
            County("610428", "长武县"),
            County("610429", "旬邑县"),
            County("610430", "淳化县"),
            County("610431", "武功县"),
            County("610481", "兴平市"),
            County("610482", "彬州市"),
        ),
    ),
    City(
        "610500",
        "渭南市",
        (
            County("610502", "临渭区"),
            County("610503", "华州区"),
            County("610522", "潼关县"),
            County("610523", "大荔县"),
            County("610524", "合阳县"),
            County("610525", "澄城县"),
            County("610526", "蒲城县"),
            County("610527", "白水县"),
            County("610528", "富平县"),
            County("610581", "韩城市", direct=True),
            County("610582", "华阴市"),
        ),
    ),
    City(
        "610600",
        "延安市",
        (
            County("610602", "宝塔区"),
            County("610603", "安塞区"),
            County("610621", "延长县"),
            County("610622", "延川县"),
            County("610625", "志丹县"),
            County("610626", "吴起县"),
            County("610627", "甘泉县"),
            County("610628", "富县"),
            County("610629", "洛川县"),
            County("610630", "宜川县"),
            County("610631", "黄龙县"),
            County("610632", "黄陵县"),
            County("610681", "子长市"),
        ),
    ),
    City(
        "610700",
        "汉中市",
        (
            County("610702", "汉台区"),
            County("610703", "南郑区"),
            County("610722", "城固县"),
            County("610723", "洋县"),
            County("610724", "西乡县"),
            County("610725", "勉县"),
            County("610726", "宁强县"),
            County("610727", "略阳县"),
            County("610728", "镇巴县"),
            County("610729", "留坝县"),
            County("610730", "佛坪县"),
        ),
    ),
    City(
        "610800",
        "榆林市",
        (
            County("610802", "榆阳区"),
            County("610803", "横山区"),
            County("610822", "府谷县", direct=True),
            County("610824", "靖边县"),
            County("610825", "定边县"),
            County("610826", "绥德县"),
            County("610827", "米脂县"),
            County("610828", "佳县"),
            County("610829", "吴堡县"),
            County("610830", "清涧县"),
            County("610831", "子洲县"),
            County("610881", "神木市", direct=True),
        ),
    ),
    City(
        "610900",
        "安康市",
        (
            County("610902", "汉滨区"),
            County("610921", "汉阴县"),
            County("610922", "石泉县"),
            County("610923", "宁陕县"),
            County("610924", "紫阳县"),
            County("610925", "岚皋县"),
            County("610926", "平利县"),
            County("610927", "镇坪县"),
            County("610929", "白河县"),
            County("610981", "旬阳市"),
        ),
    ),
    City(
        "611000",
        "商洛市",
        (
            County("611002", "商州区"),
            County("611021", "洛南县"),
            County("611022", "丹凤县"),
            County("611023", "商南县"),
            County("611024", "山阳县"),
            County("611025", "镇安县"),
            County("611026", "柞水县"),
        ),
    ),
)

# Base names of real towns, townships and sub-districts in Shaanxi (without the
# 镇/乡/街道 suffix). They are drawn without regard to which county they really belong to.
# fmt: off
TOWNSHIP_NAMES: tuple[str, ...] = (
    # 西安
    "鸣犊", "杜曲", "太乙宫", "王曲", "滦镇", "子午", "引镇", "大兆", "五星", "兴隆",
    "细柳", "郭杜", "韦曲", "黄良", "斗门", "草堂", "庞光", "祖庵", "甘亭", "余下",
    "秦渡", "涝店", "蒋村", "玉蝉", "石井", "大王", "甘河", "二曲", "哑柏", "终南",
    "马召", "集贤", "楼观", "尚村", "广济", "厚畛子", "竹峪", "翠峰", "九峰", "司竹",
    "蓝关", "华胥", "前卫", "汤峪", "焦岱", "玉山", "普化", "葛牌", "灞源", "辋川",
    "骊山", "秦陵", "新丰", "代王", "斜口", "行者", "相桥", "雨金", "马额", "何寨",
    "油槐", "北田", "铁炉", "任留", "西泉", "徐杨", "穆寨", "关山", "武屯", "北屯",
    "泾渭", "通远", "张卜", "耿镇", "湾子", "鹿苑", "崇皇", "席王", "狄寨", "洪庆",
    "新合", "新筑",
    # 宝鸡
    "虢镇", "阳平", "千河", "蟠龙", "天王", "周原", "贾村", "县功", "坪头", "香泉",
    "赤沙", "拓石", "凤阁岭", "钓渭", "蔡家坡", "益店", "蒲村", "枣林", "京当", "故郡",
    "法门", "天度", "午井", "绛帐", "杏林", "召公", "首善", "横渠", "槐芽", "常兴",
    "金渠", "齐镇", "八渡", "温水", "崔木", "招贤", "两亭", "九成宫", "双石铺", "凤州",
    "黄牛铺", "唐藏", "咀头", "桃川", "鹦鸽", "靖口", "黄柏塬",
    # 咸阳
    "马泉", "双照", "窑店", "正阳", "周陵", "底张", "北杜", "陂西", "独李", "大程",
    "鲁桥", "陵前", "嵯峨", "泾干", "云阳", "桥底", "王桥", "口镇", "安吴", "中张",
    "薛录", "临平", "马连", "阳洪", "注泔", "史德", "烽火", "烟霞", "叱干", "昭陵",
    "店张", "马嵬", "西吴", "桑镇", "丰仪", "汤坊", "阜寨", "普集", "游风", "贞元",
    "长宁", "五泉", "揉谷", "大寨", "北极", "龙高", "义门", "太峪", "昭仁", "相公",
    "亭口", "职田", "湫坡头", "马栏", "方里", "润镇", "车坞", "铁王", "监军", "常宁",
    # 渭南
    "双王", "孝义", "下邽", "官道", "故市", "阳郭", "崇宁", "官底", "丰原", "交斜",
    "赤水", "高塘", "瓜坡", "莲花寺", "柳枝", "金堆", "太华", "岳庙", "罗敷", "孟塬",
    "秦东", "太要", "桐峪", "代字营", "朝邑", "安仁", "羌白", "官池", "埝桥", "罕井",
    "孙镇", "党睦", "荆姚", "尧山", "椿林", "庄里", "美原", "流曲", "淡村", "留古",
    "薛镇", "到贤", "冯原", "尧头", "交道", "寺前", "洽川", "黑池", "路井", "百良",
    "尧禾", "杜康", "林皋", "雷牙", "龙门", "芝川", "芝阳", "桑树坪",
    # 延安
    "河庄坪", "李渠", "姚店", "青化砭", "甘谷驿", "南泥湾", "临镇", "川口", "麻洞川", "真武洞",
    "砖窑湾", "沿河湾", "化子坪", "招安", "七里村", "黑家堡", "张家滩", "雷赤", "永坪", "延水关",
    "文安驿", "瓦窑堡", "玉家湾", "南沟岔", "保安", "杏河", "顺宁", "旦八", "周湾", "白豹",
    "铁边城", "下寺湾", "美水", "茶坊", "张村驿", "直罗", "牛武", "凤栖", "旧县", "交口河",
    "槐柏", "京兆", "丹州", "秋林", "云岩", "壶口", "石堡", "瓦子街", "桥山", "店头",
    "隆坊",
    # 汉中
    "铺镇", "武乡", "河东店", "宗营", "老君", "汉山", "圣水", "大河坎", "协税", "梁山",
    "濂水", "黄官", "牟家坝", "法镇", "碑坝", "黎坪", "博望", "沙河营", "原公", "上元观",
    "五堵", "双溪", "董家营", "戚氏", "龙亭", "谢村", "马畅", "溢水", "磨子桥", "黄金峡",
    "槐树关", "华阳", "茅坪", "私渡", "桑园", "白龙塘", "堰口", "茶镇", "骆家坝", "勉阳",
    "褒城", "定军山", "阜川", "新铺", "漆树坝", "汉源", "大安", "代家坝", "阳平关", "燕子砭",
    "青木川", "巨亭", "兴州", "硖口驿", "白雀寺", "泾洋", "渔渡", "盐场", "简池", "紫柏",
    "马道", "武关驿", "江口", "袁家庄", "岳坝",
)
# fmt: on

SITE_SUFFIXES: tuple[str, ...] = (
    "镇卫生院",
    "镇中心卫生院",
    "街道社区卫生服务中心",
    "乡卫生院",
)

# fmt: off
PERSON_SURNAMES: tuple[str, ...] = (
    "王", "李", "张", "刘", "陈", "杨", "赵", "黄", "周", "吴",
    "徐", "孙", "胡", "朱", "高", "林", "何", "郭", "马", "罗",
    "梁", "宋", "郑", "谢", "韩", "唐", "冯", "于", "董", "程",
    "曹", "袁", "邓", "许", "沈", "彭", "吕", "苏", "蒋", "贾",
    "丁", "魏", "薛", "阎", "杜", "田", "任", "姚", "雷", "白",
    "崔", "康", "秦", "史", "侯", "孟", "段", "武", "乔", "贺",
)

PERSON_GIVEN: tuple[str, ...] = (
    "伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋",
    "勇", "艳", "杰", "娟", "涛", "明", "超", "霞", "平", "刚",
    "华", "鹏", "辉", "斌", "鑫", "婷", "雪", "琳", "倩", "颖",
    "慧", "博", "宁", "凯", "帅", "佳", "晨", "欢", "飞", "兵",
    "波", "俊", "峰", "萍", "莉", "玲", "燕", "丹", "蕾", "瑞",
    "秀英", "秀兰", "桂英", "建国", "建华", "建军", "志强", "志刚", "海燕", "红梅",
    "丽娟", "玉兰", "文博", "浩然", "子涵", "欣怡", "宇轩", "晓东", "晓燕", "晓峰",
    "亚楠", "春燕", "春梅", "少华", "卫东", "卫国", "新民", "振华", "立新", "国庆",
    "文静", "丽华", "晓丽", "秦川", "长青", "永刚", "海涛", "红霞", "小军", "建平",
    "军锋", "小龙", "亚军", "艳妮", "小妮", "变霞", "文娟", "宏伟", "志军", "彦军",
)
# fmt: on
